"""MIDI data: dataset checks, the tokenizer, the token store, training windows, augmentation."""
