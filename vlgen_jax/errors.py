"""User-facing errors: the CLI prints these as one line, without a traceback."""

import errno


class UserError(Exception):
  """A mistake in what the user asked for (bad option, missing file, bad config).

  The message must name the problem in one line; `vlgen` prints
  `error: <message>` and exits with status 2.
  """


# OSErrors that name a path the user gave: exit status 2. Others (ENOSPC,
# EDQUOT, EIO, EMFILE, ...) are the environment's: exit status 1.
USER_ERRNOS = frozenset({
    errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS,
    errno.EEXIST, errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTEMPTY, errno.EXDEV})

_HINTS = {
    errno.ENOSPC: "the disk is full; free space and rerun (the run resumes from its last "
                  "checkpoint)",
    errno.EDQUOT: "the disk quota is exceeded; free space and rerun",
    errno.EFBIG: "a file grew past the size limit of this system or job",
    errno.EROFS: "that filesystem is read-only; choose a writable location",
    errno.EACCES: "permission denied; choose a location you can write to",
}


def describe_os_error(e: OSError) -> str:
  """`<strerror>: <path>[ -> <path2>] (<hint>)` on one line."""
  text = e.strerror or errno.errorcode.get(e.errno, str(e))
  if e.filename is not None:
    text += f": {e.filename}"
    if e.filename2 is not None:
      text += f" -> {e.filename2}"
  hint = _HINTS.get(e.errno)
  return f"{text} ({hint})" if hint else text


class Terminated(BaseException):
  """SIGTERM outside a command's own stop handling: unwinds like Ctrl-C, so
  `finally` blocks remove temporary outputs and release locks (vlgen_jax/cli.py)."""
