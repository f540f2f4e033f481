#!/usr/bin/env python
"""manage.py of the test project, starting with the two lines the documentation asks for."""
from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import sys  # noqa: E402


def main():
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
