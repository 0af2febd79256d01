"""Configuration: the schema that validates a config (`schema`) and the allowed values of the choice
keys (`choices`). Imports only `base`, `data` (its constants) and `models` (the family registry)."""
