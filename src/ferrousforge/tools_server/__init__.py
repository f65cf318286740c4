"""llama-server's server-side tools: built-in file and shell tools, MCP servers over stdio.

Served at GET/POST /tools (see ``ferrousforge.api.server_tools``). These tools read and write
files and run commands with the server's privileges: they are off unless ``--tools`` or an MCP
config is given, and are meant for a local server used by trusted people only.
"""
