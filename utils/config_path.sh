# Sourced by train_fastMRI.sh and test_fastMRI.sh.
# config_path METHOD [NAME]: echo configs/<hfssde|vp|ve>/<NAME or ddpm_continuous>.py, or fail with a message.
config_path() {
  local folder
  case "$1" in
    hfssde) folder=hfssde ;;
    vp|vpsde) folder=vp ;;
    ve|vesde) folder=ve ;;
    *) echo "unknown method '$1' (choose hfssde, vp or ve)" >&2; return 2 ;;
  esac
  local file=configs/$folder/${2:-ddpm_continuous}
  file=${file%.py}.py
  if [ ! -f "$file" ]; then
    echo "no config file $file; configs/$folder holds: $(ls configs/$folder | grep -v __ | tr '\n' ' ')" >&2
    return 2
  fi
  echo "$file"
}
