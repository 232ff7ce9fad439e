"""Access to llama.cpp: the library in this process (:mod:`.library`) and its programs (:mod:`.tools`)."""
