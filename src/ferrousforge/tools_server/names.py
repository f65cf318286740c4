"""The built-in tool names ``--tools`` accepts (kept apart so settings can check them cheaply)."""

BUILTIN_TOOL_NAMES = (
    "read_file",
    "file_glob_search",
    "grep_search",
    "exec_shell_command",
    "write_file",
    "edit_file",
    "get_info",
)
