"""Alerts: a job's failed, succeeded, hung, preempted and lost-worker events sent to Apprise URLs by the supervisor.

The outbox entry is written atomically with the event (:mod:`jobs.alerts.kinds` says which events alert); the
supervisor's :class:`jobs.alerts.sender.AlertSender` sends each once, retries with backoff, and redacts the URLs'
secrets everywhere they are shown (:mod:`jobs.alerts.urls`). Nothing is imported here: the job store imports
:mod:`jobs.alerts.kinds` and must not load Apprise.
"""
