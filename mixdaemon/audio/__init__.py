"""Audio: files in and out (io), bounced files to one song (stems), the DSP primitives (dsp), the
final true-peak limiter (mastering), the measurements and losses (metrics), example audio
(examples). Imports nothing of the package above errors, files, progress and defaults."""
