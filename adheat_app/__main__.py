"""``python -m adheat_app`` runs the BIDS-App command line."""

from adheat_app.cli.run import main

if __name__ == "__main__":
    raise SystemExit(main())
