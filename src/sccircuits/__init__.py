"""sccircuits: causal circuit tracing in single-cell foundation models.

Pipeline stages, one module each: ``models`` (adapters), ``activations``, ``sae``,
``annotate``, ``trace``, ``analysis``, ``validate``, ``report``. See README.md.
"""

__version__ = "0.1.0"
