"""The one exception users see: a single line naming the file, line or label at fault."""


class HierError(ValueError):
    """Bad input. The message is one line and says where (file:line, label or option)."""
