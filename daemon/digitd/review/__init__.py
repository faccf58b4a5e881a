"""The verification station: `digitd review`, a local web page where people confirm or
correct the results the model was unsure of.

    index.py     what there is to review: results.csv and corrections.csv read as they grow
    verdicts.py  a verdict, checked, and written: outbox/corrections.csv and corrections/<id>.png
    app.py       the web page and its JSON API (Starlette), served by uvicorn
    static/      the page's HTML, CSS and JavaScript (no CDN: it works offline)

It reads the outbox the daemon writes and never writes results.csv; it imports no TensorFlow.
"""
