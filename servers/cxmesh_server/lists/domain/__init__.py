"""List rules without I/O: normalisation, time zones, records, file formats, suppression."""
