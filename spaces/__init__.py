"""Search spaces shipped with gce-search (YAML files) and their schema/loader."""
