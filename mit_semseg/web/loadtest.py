"""``python -m mit_semseg.web.loadtest`` (round 2's command) is now ``python
tools/web_loadtest.py`` (a developer tool of the repository's checkout); running
this path says so in one line and exits with status 2."""
if __name__ == "__main__":
    import sys

    from ..runtime.command import moved_command
    sys.exit(moved_command("mit_semseg.web.loadtest", "python tools/web_loadtest.py"))
