"""The exceptions vidaffect raises on purpose, and what the command line makes of them.

* :class:`UserError`: something the user asked for cannot be done as asked (an unknown
  option value, a parameter out of range, a missing input folder, a malformed
  annotation file).  The message is one line naming the thing and what is allowed;
  the command line prints it and exits with status 2.  Its two concrete kinds,
  :class:`ParameterError` (also a ``ValueError``) and :class:`InputNotFound` (also a
  ``FileNotFoundError``), let Python callers catch them the usual way.
* :class:`SetupError`: this machine cannot run a stage at all (a model file is missing
  and cannot be downloaded); one line that says which file and what to do, exit 1.
  :class:`StoreWriteError` is one: the feature store folder cannot be written (no
  space left, read-only, no permission), so no further video can succeed either.

Any other exception is a fault inside vidaffect or a library: the command line prints
one line and exits with status 1, and shows the traceback under ``-v``.
"""

from __future__ import annotations


class UserError(Exception):
    """A request that cannot be carried out as given; the message says why in one line."""


class ParameterError(UserError, ValueError):
    """A bad option, parameter or file content."""


class InputNotFound(UserError, FileNotFoundError):
    """A file or folder the user named (or that a default names) does not exist."""


class SetupError(RuntimeError):
    """This machine cannot run a stage at all (e.g. a model file is missing and cannot
    be downloaded); the message says which file and what to do."""


class StoreWriteError(SetupError):
    """The feature store cannot be written (no space left on the device, a read-only
    file system, no permission); the message says what and where, e.g. "no space left
    on device while writing features/clip.h5"."""
