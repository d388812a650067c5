"""Constants and record layouts shared by every layer. No behaviour lives here."""
