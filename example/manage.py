#!/usr/bin/env python
"""Django's command-line utility for the example site."""

# The two lines that let gevent serve many connections from one process:
# they must run before anything else is imported.
from gevent import monkey
monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
