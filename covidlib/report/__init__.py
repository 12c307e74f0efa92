"""What the book shows: the reproduction scorecard, paper values, tables, figures,
provenance, offline assets and the book runner (``covidlib book``)."""
