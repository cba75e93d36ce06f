from vggcli.cli import app

app(prog_name="vgg")
