"""Errors a user can cause when naming or loading a model."""


class ModelError(Exception):
    """Base: the message is the whole story, shown to the user as one line."""


class ModelNotFoundError(ModelError):
    pass


class UnsupportedModelError(ModelError):
    pass
