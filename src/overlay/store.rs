//! The overlay catalog and trees in the CAS (see the module essay in `overlay`).
