"""The pipeline layer: the typed config, the stage table and what it derives (settings files, code
fingerprints, dvc.yaml, generated docs), and where every file lives. No stage's code fingerprint
includes this folder: what it decides reaches a job through its settings file."""
