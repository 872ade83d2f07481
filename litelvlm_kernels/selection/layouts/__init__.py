"""One layout per family kind (docs/design.md 11.2): views, placeholder counts, where the kept rows go."""
