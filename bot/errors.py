"""Every error the engine raises on purpose, each one line that names the problem and the fix.

    VoicesError                    base; str(error) is the user's one-line message
    ├── InputError                 bad input from a person (options, ids, settings) — nothing was spent
    │   ├── UnknownModel           a model id the catalogue does not know
    │   └── DialogueNotFound       no dialogue with that id
    ├── StateError                 the request does not fit the dialogue's state (e.g. resume a finished one)
    │   └── LeaseHeld              another live process runs the dialogue
    ├── StoreError                 the database cannot be used (corrupt, newer schema, unwritable)
    │   └── Duplicate              a row with that key is stored already
    └── ProviderError              a model provider failed; .retryable says whether to try again
        ├── BadRequest             400 and 404: the request must change
        ├── AuthError              401: the API key is missing, wrong or disabled
        ├── OutOfCredits           402
        ├── Moderation             403
        ├── RateLimited            408 and 429 (retryable, honours Retry-After)
        ├── ServerError            5xx and mid-stream errors (retryable)
        └── ConnectionFailed       timeouts, refused or dropped connections (retryable)

Front ends map these to people in one place each (the CLI's `main`, the Discord error cog).
"""

from __future__ import annotations


class VoicesError(Exception):
    """Base of every deliberate error; its message is shown to the user as it is."""


class InputError(VoicesError):
    """A person gave something the engine cannot use; nothing was spent or written."""


class UnknownModel(InputError):
    """The catalogue does not list this model."""


class DialogueNotFound(InputError):
    """No dialogue has this id."""


class StateError(VoicesError):
    """The dialogue is not in a state that allows this."""


class LeaseHeld(StateError):
    """Another process holds the dialogue's lease, or took it over from this one."""

    def __init__(self, message: str, seconds_left: float | None = None):
        super().__init__(message)
        #: When the holder's lease lapses if it is not renewed (None: it was taken from us).
        self.seconds_left = seconds_left


class StoreError(VoicesError):
    """The database cannot be opened or used."""


class Duplicate(StoreError):
    """A row with this key is stored already (whichever database said so)."""


class ProviderError(VoicesError):
    """A model provider failed."""

    retryable = False

    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after


class BadRequest(ProviderError):
    """The provider rejected the request itself (400, 404)."""


class AuthError(ProviderError):
    """The API key was missing or rejected (401)."""


class OutOfCredits(ProviderError):
    """The account or key has no credits left (402)."""


class Moderation(ProviderError):
    """The input was flagged by moderation (403)."""


class RateLimited(ProviderError):
    """Too many requests or a request timeout at the provider (408, 429)."""

    retryable = True


class ServerError(ProviderError):
    """The provider or the upstream model failed (5xx, or an error inside the stream)."""

    retryable = True


class ConnectionFailed(ProviderError):
    """The connection timed out, was refused or dropped."""

    retryable = True
