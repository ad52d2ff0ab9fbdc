"""The one exception type for errors a user can cause and fix."""


class AblateError(Exception):
    """A problem with the user's input (data file, spec, option) rather than a bug.

    The message names the file, line or key at fault and says how to fix it. The CLI prints it
    without a traceback and exits with status 2.
    """
