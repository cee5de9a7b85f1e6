"""Keras on the wire: models as configs or allowlisted builders, ``model.fit``'s data forms as arrays and datasets,
callbacks as spec sections, and the submit-time checks that need Keras."""
