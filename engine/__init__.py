"""PianoMuse engine: model, kernels, data, trainer, generation and real-time MIDI. Never imports textual."""
