"""Model families, one self-contained folder each (configuration, modeling and conversion code): a modeling file
imports only its siblings, so a saved directory carries all the code `trust_remote_code` needs."""
