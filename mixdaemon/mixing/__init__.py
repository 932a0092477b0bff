"""The job API: the Engine protocol and its factory (engine), the engines (match, neural, param),
one style-transfer job (transfer), automix, separation of mixtures, and the doors through which the
daemon, the evaluation and the command line reach fx/ and nets/ (normalization, models, effects)."""
