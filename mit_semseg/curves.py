"""``python -m mit_semseg.curves`` (round 2's command) is now ``python -m mit_semseg
curves``; running this path says so in one line and exits with status 2."""
if __name__ == "__main__":
    import sys

    from .runtime.command import moved_command
    sys.exit(moved_command("mit_semseg.curves", "python -m mit_semseg curves"))
