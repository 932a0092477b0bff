"""mixdaemon: neural mixing style transfer (MST) and automatic mixing (FxNorm-automix) for DAW users."""

__version__ = "0.1.0"
