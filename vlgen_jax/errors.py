"""User-facing errors: the CLI prints these as one line, without a traceback."""


class UserError(Exception):
  """A mistake in what the user asked for (bad option, missing file, bad config).

  The message must name the problem in one line; `vlgen` prints
  `error: <message>` and exits with status 2.
  """
