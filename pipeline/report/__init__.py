"""`san report`: a labeling output as one self-contained HTML page (`html`), from one pass over its
rows (`collect`), with matplotlib figures (`plots`)."""
