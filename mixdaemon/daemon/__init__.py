"""The daemon: configuration, watch folders, OSC and request files, the job store and its worker,
manifests and reports, preview playback, and the service that wires them. Reaches the engines
through mixing/ only; never imports nets/, fx/ or train/."""
