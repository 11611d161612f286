"""Figures that explain model choices; each writes a PNG under ``docs/img/``.

Plotting needs the optional ``matplotlib`` and ``scikit-learn`` packages; import the figure
modules themselves (e.g. :mod:`models.plots.loss_geometry`) so this package stays import-light.
"""
