from faceapp import create_app

app = create_app()
