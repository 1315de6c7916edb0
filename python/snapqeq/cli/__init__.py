"""The ``snapqeq`` command line: train, test, export, build-lammps-plugin and olcao."""
