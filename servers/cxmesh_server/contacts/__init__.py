"""Facts about a contact that several services derive the same way: E.164 phone numbers and
time zones (explicit > postal code > phone number). Pure; shared by lists and compliance."""
