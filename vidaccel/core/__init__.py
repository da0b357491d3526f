"""The technique machinery every technique builds on, below :mod:`vidaccel.api`.

* :mod:`.technique`: the :class:`~.technique.Technique` base class, the config-type registry and the table of
  techniques attached to each transformer;
* :mod:`.processors`: exact swapping of attention processors;
* :mod:`.presets`: named sets of configs;
* :mod:`.pipeline_class`: the per-call bookkeeping (technique reset, ``pipe.last_run``) of vidaccel pipelines.
"""
