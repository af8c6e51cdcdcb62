"""The admin command's groups, one module each (a group's actions may span several modules):
each module has register(commands), listed in atollon_mail.cli.COMMAND_MODULES. What they
share is in output.py (what is printed, refusals, exit statuses) and common.py (argument
types, text input, running a handler against the store)."""
