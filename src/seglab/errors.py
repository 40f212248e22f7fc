"""User-facing errors: the CLI prints their message on one line and exits 1, with no traceback."""


class SeglabError(Exception):
    """A problem the user can fix (bad file, bad flag, bad folder). The message says what and how."""


class DataError(SeglabError):
    """An image, mask or data folder that cannot be used as it is."""


class CheckpointError(SeglabError):
    """A checkpoint file that is missing, corrupt, unsafe or from something else."""


class ConfigError(SeglabError):
    """An option whose value is of the wrong type or out of range, or an option that does not exist."""


class NotAnImageError(DataError):
    """Bytes that no image decoder recognises (a text file, an archive, a truncated header)."""


class ImageTooLargeError(DataError):
    """An image whose header claims more pixels than the limit: a decompression bomb, or a very large image."""


class ResourceError(SeglabError):
    """A valid request the machine has not the resources for now (memory): a 503 from the server."""
