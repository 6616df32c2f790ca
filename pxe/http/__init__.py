"""HTTP boot: iPXE script rendering from a BootSpec (the views live in web/)."""
