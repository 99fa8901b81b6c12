"""The `repro` program, above the packages it joins: ``repro`` (computes the store), ``analyses`` and
``report`` (read it)."""
