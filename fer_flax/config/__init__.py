"""Configuration: the default of every key with the valid values of every choice key (`defaults`), the
value tuples of the choice keys (`choices`) and the schema that validates a config (`schema`). Imports
only `base`, `data` (its constants) and `models` (the family registry)."""
