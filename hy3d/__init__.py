"""The ``hy3d`` command line: run the flow, run the demo, run the emulator."""
