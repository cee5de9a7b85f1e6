"""Issue 26 item 2 (contexts): ``~/.config/traind/config.toml`` resolution order (arguments > env > context),
tokens only to their own server, ssh-like permission refusals, one-line errors naming the file, and the
``traind context`` commands (pure logic and files under tmp_path)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from daemon.cli import main
from jobs import config_file
from jobs.config_file import Local, Remote, load, resolve
from jobs.errors import ConfigError

TEAM = "https://traind.example"


def _write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)
    return path


@pytest.fixture()
def cfg(tmp_path: Path) -> Path:
    token_file = _write(tmp_path / "team.token", "traind_team-token\n")
    return _write(tmp_path / "config.toml", f"""current = "team"

[contexts.team]
api_url = "{TEAM}/"
token_file = "{token_file}"

[contexts.inline]
api_url = "http://127.0.0.1:8600"
token = "traind_inline-token"

[contexts.local]
redis_url = "redis://:pw@127.0.0.1:6400/0"
storage = "/srv/traind"
""")


def test_config_path_honours_traind_config_and_xdg(tmp_path: Path) -> None:
    assert config_file.config_path({"TRAIND_CONFIG": str(tmp_path / "c.toml")}) == tmp_path / "c.toml"
    assert config_file.config_path({"XDG_CONFIG_HOME": str(tmp_path)}) == tmp_path / "traind" / "config.toml"
    assert config_file.config_path({"XDG_CONFIG_HOME": "relative"}) == Path("~/.config/traind/config.toml").expanduser()


def test_resolution_order(cfg: Path) -> None:
    env = {"TRAIND_CONFIG": str(cfg)}
    # 4. the current context, its token from its token file
    t = resolve(env=env)
    assert t == Remote(TEAM, "traind_team-token", f"context team (the file's current; {cfg})")
    assert "traind_team-token" not in repr(t)
    # 3. TRAIND_CONTEXT / an explicit context beat the current one
    assert resolve(env={**env, "TRAIND_CONTEXT": "local"}) == Local("redis://:pw@127.0.0.1:6400/0", "/srv/traind",
                                                                     f"context local (TRAIND_CONTEXT; {cfg})")
    assert resolve(context="inline", env=env).token == "traind_inline-token"
    # 2. the environment beats the current context; its token goes with its URL
    t = resolve(env={**env, "TRAIND_API_URL": "https://other.example", "TRAIND_API_TOKEN": "traind_env"})
    assert t == Remote("https://other.example", "traind_env", "environment (TRAIND_API_URL)")
    assert resolve(env={**env, "TRAIND_REDIS_URL": "redis://r:6379/0"}).source.startswith("environment (TRAIND_RED")
    # ... TRAIND_API_TOKEN alone overrides the current context's token for the context's own URL
    assert resolve(env={**env, "TRAIND_API_TOKEN": "traind_env"}).token == "traind_env"
    # 1. explicit arguments beat everything
    t = resolve(api_url="https://cli.example", token="traind_arg", env={**env, "TRAIND_API_URL": "https://x"})
    assert t == Remote("https://cli.example", "traind_arg", "arguments")
    assert resolve(redis_url="redis://a:1/0", env=env) == Local("redis://a:1/0", None, "arguments")
    # nothing configured: the settings' defaults
    assert resolve(env={"TRAIND_CONFIG": str(cfg.parent / "none.toml")}).source.startswith("defaults")


def test_the_context_option_outranks_traind_context_and_says_so(cfg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"TRAIND_CONFIG": str(cfg), "TRAIND_CONTEXT": "local", "TRAIND_API_URL": "https://other.example"}
    monkeypatch.setattr(config_file, "option_context", "team")  # what `traind --context team` sets for a command
    t = resolve(env=env)
    assert (t.api_url, t.token, t.source) == (TEAM, "traind_team-token", f"context team (the --context option; {cfg})")
    assert resolve(context="inline", env=env).source.startswith("context inline (named on the command line;")


def test_a_ca_bundle_from_the_env_or_only_for_its_own_context(cfg: Path) -> None:
    text = cfg.read_text().replace('[contexts.inline]', '[contexts.inline]\nca_bundle = "~/ca.pem"')
    cfg.write_text(text)
    env = {"TRAIND_CONFIG": str(cfg)}
    assert resolve(context="inline", env=env).ca_bundle == str(Path("~/ca.pem").expanduser())
    assert resolve(env=env).ca_bundle is None  # team has none: the system's CAs
    assert resolve(context="inline", env={**env, "TRAIND_API_CA_BUNDLE": "/etc/ca.pem"}).ca_bundle == "/etc/ca.pem"
    # another URL than the context's: the context's CA bundle (like its token) does not apply
    inline = {**env, "TRAIND_CONTEXT": "inline"}
    assert resolve(api_url="https://x.example", env=inline).ca_bundle is None
    assert resolve(api_url="http://127.0.0.1:8600", env=inline).ca_bundle == str(Path("~/ca.pem").expanduser())
    assert resolve(api_url="https://x.example", token="t", env=env).ca_bundle is None


def test_a_token_never_travels_to_another_server(cfg: Path) -> None:
    env = {"TRAIND_CONFIG": str(cfg)}
    # another URL from the env: the current context's token stays home (no token: the server answers 401)
    assert resolve(env={**env, "TRAIND_API_URL": "https://evil.example"}).token is None
    assert resolve(api_url="https://evil.example", env=env).token is None
    # the same URL as the current context: its token applies
    assert resolve(api_url=TEAM, env=env).token == "traind_team-token"
    # an env token meant for TRAIND_API_URL is not sent to a context's other server
    t = resolve(context="team", env={**env, "TRAIND_API_URL": "https://a.example", "TRAIND_API_TOKEN": "traind_a"})
    assert t.api_url == TEAM and t.token == "traind_team-token"


def test_permission_refusals_like_ssh(tmp_path: Path, cfg: Path) -> None:
    env = {"TRAIND_CONFIG": str(cfg)}
    token_file = tmp_path / "team.token"
    token_file.chmod(0o644)
    with pytest.raises(ConfigError) as e:
        resolve(env=env)
    msg = str(e.value)
    assert f"token file {token_file} is accessible by group/others (mode 0644)" in msg
    assert f"chmod 600 {token_file}" in msg and "\n" not in msg
    token_file.chmod(0o600)
    cfg.chmod(0o640)  # the file holds an inline token: refused when that context is used ...
    with pytest.raises(ConfigError, match=r"holds a token \(contexts.inline\) but is accessible by group/others "
                                          r"\(mode 0640\); run `chmod 600 "):
        resolve(context="inline", env=env)
    assert resolve(env=env).token == "traind_team-token"  # ... not for a context with a token file


@pytest.mark.parametrize("text,problem", [
    ("current = [", "not valid TOML"),
    ('current = "nope"\n[contexts.a]\napi_url = "https://a"\n', "current = 'nope' names no [contexts.nope] table"),
    ('[contexts.a]\napi_url = "https://a"\nredis_url = "redis://x"\n', "remote (api_url, token/token_file) or local"),
    ('[contexts.a]\napi_url = "https://a"\npasword = "x"\n', "contexts.a: unknown key(s) pasword"),
    ('[contexts.a]\ntoken = "x"\n', "token/token_file without api_url"),
    ('[contexts.a]\napi_url = 5\n', "contexts.a: api_url must be strings"),
    ('colour = "red"\n', "unknown top-level key(s) colour"),
    ('[contexts."a b"]\napi_url = "https://a"\n', "context names are 1-64"),
])
def test_bad_config_is_one_line_naming_the_file(tmp_path: Path, text: str, problem: str) -> None:
    path = _write(tmp_path / "config.toml", text)
    with pytest.raises(ConfigError) as e:
        load(path)
    assert str(e.value).startswith(f"{path}: ") and problem in str(e.value) and "\n" not in str(e.value)


def test_bad_url_and_oversized_file(tmp_path: Path) -> None:
    for url, why in (("ftp://h", r"must be http\(s\)://host"), ("https://u:p@h", "no user, password"),
                     ("https://h:99999", "invalid API URL")):
        path = _write(tmp_path / "c.toml", f'current = "a"\n[contexts.a]\napi_url = "{url}"\n')
        with pytest.raises(ConfigError, match=why):
            resolve(env={"TRAIND_CONFIG": str(path)})
    big = _write(tmp_path / "big.toml", "#" * (config_file.MAX_CONFIG_BYTES + 10))
    with pytest.raises(ConfigError, match="larger than"):
        load(big)


def test_context_commands_write_0600_and_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "xdg" / "traind" / "config.toml"
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for k in ("TRAIND_CONFIG", "TRAIND_CONTEXT", "TRAIND_API_URL", "TRAIND_API_TOKEN", "TRAIND_REDIS_URL"):
        monkeypatch.delenv(k, raising=False)
    token_file = _write(tmp_path / "t.token", "traind_from-file\n")
    assert main(["context", "add", "team", "--api-url", TEAM, "--token-file", str(token_file)]) == 0
    assert os.stat(path).st_mode & 0o777 == 0o600 and os.stat(path.parent).st_mode & 0o077 == 0
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO('traind_"quoted\\token\n'))
    assert main(["context", "add", "ci", "--api-url", "http://127.0.0.1:8600", "--token-stdin"]) == 0
    assert main(["context", "add", "here", "--redis-url", "redis://127.0.0.1:6400/0", "--storage", "/srv/t"]) == 0
    assert "traind_from-file" not in path.read_text()  # a token file is referred to, not copied
    assert load(path).contexts["ci"].token == 'traind_"quoted\\token'  # the writer's escapes read back
    capsys.readouterr()

    assert main(["context", "list"]) == 0
    out = capsys.readouterr().out
    assert "* " not in out.splitlines()[0] and any(line.startswith("*") and "team" in line for line in out.splitlines())
    assert "quoted" not in out
    assert main(["context", "use", "ci"]) == 0
    assert resolve(env={"XDG_CONFIG_HOME": str(tmp_path / "xdg")}).token == 'traind_"quoted\\token'
    capsys.readouterr()
    assert main(["context", "show"]) == 0
    out = capsys.readouterr().out
    assert "api_url: http://127.0.0.1:8600" in out and "token:   set" in out and "quoted" not in out

    assert main(["context", "use", "nope"]) == 1
    assert "no context named 'nope' (known: ci, here, team)" in capsys.readouterr().err
    assert main(["context", "add", "team", "--api-url", TEAM]) == 2
    assert "exists already (--force replaces it)" in capsys.readouterr().err
    token_file.chmod(0o604)
    assert main(["context", "add", "t2", "--api-url", TEAM, "--token-file", str(token_file)]) == 2
    assert "chmod 600" in capsys.readouterr().err
    assert main(["context", "add", "t3", "--api-url", TEAM, "--storage", "/x"]) == 2
    assert "--storage goes with a local context" in capsys.readouterr().err
    assert main(["context", "add", "t4"]) == 2
    assert "needs --api-url URL (a server) or --redis-url/--storage" in capsys.readouterr().err
    assert main(["context", "remove", "ci"]) == 0
    assert load(path).current is None and set(load(path).contexts) == {"here", "team"}


def test_a_local_context_is_what_redis_commands_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    redis_url: str, storage_dir: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """`traind context use here` points `traind list` (the fast path) and the client commands (settings) at that
    Redis without TRAIND_REDIS_URL; options and the environment still win; a remote context's token is not read."""
    from jobs.client import Client
    from tests.serve.conftest import slow_spec

    jid = Client(redis_url=redis_url, storage=storage_dir).submit(slow_spec("ctx")).id
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    for k in ("TRAIND_CONFIG", "TRAIND_CONTEXT", "TRAIND_API_URL", "TRAIND_API_TOKEN", "TRAIND_REDIS_URL",
              "TRAIND_STORAGE_DIR"):
        monkeypatch.delenv(k, raising=False)
    assert main(["context", "add", "here", "--redis-url", redis_url, "--storage", str(storage_dir), "--use"]) == 0
    capsys.readouterr()
    assert main(["list", "--json"]) == 0
    assert [j["id"] for j in __import__("json").loads(capsys.readouterr().out)] == [jid]
    monkeypatch.setenv("TRAIND_OWNER", "ctx-user")  # any other TRAIND_ variable: the settings path
    assert main(["status", jid, "--json"]) == 0 and jid in capsys.readouterr().out
    assert main(["list", "--json", "--redis-url", "redis://127.0.0.1:1/0"]) == 1  # the option wins
    assert "127.0.0.1:1" in capsys.readouterr().err

    # A remote current context with a token file nobody may read: Redis commands do not read it.
    token_file = _write(tmp_path / "t.token", "traind_x\n", mode=0o644)
    _write(tmp_path / "xdg" / "traind" / "config.toml", f'current = "team"\n[contexts.team]\napi_url = "{TEAM}"\n'
           f'token_file = "{token_file}"\n')
    from daemon.cli_context import context_local

    assert context_local(__import__("argparse").Namespace()) == (None, None)
    # A broken file is one line naming it, for every command that consults it.
    _write(tmp_path / "xdg" / "traind" / "config.toml", "current = [")
    assert main(["list", "--redis-url", redis_url]) == 0  # an explicit URL needs no context
    capsys.readouterr()
    assert main(["list"]) == 2
    err = capsys.readouterr().err
    assert "config.toml: not valid TOML" in err and err.count("\n") == 1
