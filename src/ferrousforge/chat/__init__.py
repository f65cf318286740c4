"""Chat on top of the engine: tool calls, reasoning and chat templates.

A chat request becomes a prompt (the template rendered with tools), generation options (a
grammar, lazy until the format's trigger under ``tool_choice="auto"``) and a parser that
turns the generated text back into content, reasoning and tool calls. The HTTP routes and
``LlamaCppBackend.infer`` both go through ``plan_chat``.
"""
