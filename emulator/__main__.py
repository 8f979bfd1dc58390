"""`python -m emulator [flags]`: run the emulator in the foreground."""

from emulator.cli import main

raise SystemExit(main())
