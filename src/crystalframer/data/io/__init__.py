"""Readers of the user's own data, one module per format family; :mod:`crystalframer.data.io.load` dispatches.

* :mod:`~crystalframer.data.io.load`: :func:`~crystalframer.data.io.load.load_dataset`, the one entry point;
* :mod:`~crystalframer.data.io.tables`: CSV / TSV files and pandas DataFrames;
* :mod:`~crystalframer.data.io.folders`: folders of structure files with ``id_prop.csv``;
* :mod:`~crystalframer.data.io.ase_files`: ASE databases and multi-frame files (extxyz);
* :mod:`~crystalframer.data.io.json_files`: JSON lists, JSON lines and pandas "split" JSON;
* :mod:`~crystalframer.data.io.lists`: in-memory lists of structures and single structure files;
* :mod:`~crystalframer.data.io.jarvis`: JARVIS-Tools ``Atoms`` dicts;
* :mod:`~crystalframer.data.io.entries`: what they share (entries → validated crystals).

Single structures (CIF, POSCAR, pymatgen, ASE, dicts) are read by :mod:`crystalframer.data.structures`.
"""
