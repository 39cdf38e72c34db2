"""Results -> text, Markdown and pictures; measures nothing. markdown.py writes REPORT.md,
results.json and the plots (and renders them again from a results.json alone); tables.py and
peer_tables.py make the tables; plots.py and pictures.py draw; flame.py writes the interactive
flame graphs (HTML); terminal.py prints; code_view.py and switch_code.py show the switches'
naive and fast code side by side (notebook 02)."""
