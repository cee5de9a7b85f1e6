"""The notebook workflow, trained by traind instead of in-process.

Run against a stack started with ``traind up``:  ``python -m examples.fit_client --redis-url redis://...``
"""

from __future__ import annotations

import argparse
import os


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--redis-url", default=os.environ.get("TRAIND_REDIS_URL"))
    ap.add_argument("--storage", default=os.environ.get("TRAIND_STORAGE_DIR"))  # None: the settings default
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()

    from keras.callbacks import EarlyStopping, ModelCheckpoint

    from examples.regression import build_model, load_data
    from jobs.client import Client

    x, t = load_data()
    model = build_model()
    client = Client(redis_url=args.redis_url, storage=args.storage)
    job = client.fit(
        model, x, t, epochs=200, batch_size=100, validation_split=0.3,
        callbacks=[
            ModelCheckpoint("best.weights.h5", save_weights_only=True, save_best_only=True, monitor="val_loss"),
            EarlyStopping(monitor="val_loss", patience=3, restore_best_weights=True),
        ],
    )
    print(f"submitted {job.id}; waiting ...")
    st = job.wait(timeout=args.timeout)
    print(f"{st['state']}: {st['epoch']} epochs, best val_loss {st['best_value']:.4f} at epoch {st['best_epoch']}"
          f"{' (stopped early)' if st['stopped_early'] else ''}")
    trained = job.load_model()
    print("reloaded best model:", trained.name)


if __name__ == "__main__":
    main()
