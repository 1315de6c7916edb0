"""File formats: reference data (extended XYZ, RuNNer ``input.data``), the model-file
archive and its metadata schema, LAMMPS SNAP coefficient files and OLCAO files."""
